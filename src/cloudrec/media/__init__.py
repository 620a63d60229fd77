"""cloudrec.media"""
