"""cloudrec.core"""
