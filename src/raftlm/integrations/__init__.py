"""Bridges to other engines, each behind its own optional extra (``ray``: ``pip install 'raftlm[ray]'``).

Nothing here is imported by the rest of raftlm except on demand (``raftlm predict --engine ray``)."""
