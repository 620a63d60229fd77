"""cloudrec.worker"""
