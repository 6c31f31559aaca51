"""streamtrain.snapshot"""
