"""streamtrain.ingest"""
