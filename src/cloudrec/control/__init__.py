"""cloudrec.control"""
