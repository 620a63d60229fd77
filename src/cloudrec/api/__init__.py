"""cloudrec.api"""
