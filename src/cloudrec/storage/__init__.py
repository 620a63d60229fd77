"""cloudrec.storage"""
