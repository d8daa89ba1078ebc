"""Generated stubs of the wire contract ``l1pca.v1`` (``proto/l1pca/v1/l1pca.proto``).

Regenerate with ``make proto``; never edit the ``*_pb2*`` files by hand.
"""
