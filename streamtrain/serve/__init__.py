"""streamtrain.serve"""
