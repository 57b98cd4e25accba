"""Which model versions serve: the repository of model folders and the loaded versions
(repository.py), version folders and policies (versions.py), an object store mirrored
into a local cache (object_store.py), poll mode (poll.py), closing versions that left
once their requests finish (drain.py), labels and traffic split (routing.py) and
their copy in the repository that every replica follows (routing_store.py),
``icow import-model`` / ``export-model`` (model_import.py), and models deployed over
the wire (deploy.py).

May import: icow.protocol, icow.runtime (and the compiled base: icow._wire, icow._proto).
"""
