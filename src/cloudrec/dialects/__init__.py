"""cloudrec.dialects"""
