"""cloudrec.dialects.tencent"""
