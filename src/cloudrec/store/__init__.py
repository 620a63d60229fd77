"""cloudrec.store"""
