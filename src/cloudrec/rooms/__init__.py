"""cloudrec.rooms"""
