"""What flows down the data path, below everything that moves it: the sample's own types.

``spec.py`` (``SampleSpec``: feature shape and label kind, the contract from producer to
server) → ``sparse_numpy.py`` (``Jagged`` / ``SparseRows``: a batch's sparse IDs as numpy
arrays, values + lengths + weights) and ``sparse_torch.py`` (``JaggedTensor``: the same IDs as
torch tensors, ``EmbeddingBag``'s input) → ``batch.py`` (``Batch``: decoded arrays plus the
stream position after them) with ``record_mark.py`` (``RecordMark``: the fingerprint of the
record a position ends on). Nothing here reads Kafka, HTTP or files; every layer above
imports these types and none of them imports a layer above.
"""
