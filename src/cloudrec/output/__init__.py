"""cloudrec.output"""
