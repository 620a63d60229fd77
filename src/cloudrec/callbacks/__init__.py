"""cloudrec.callbacks"""
