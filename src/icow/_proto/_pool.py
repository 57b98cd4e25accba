"""The descriptor pool that icow's generated modules register into."""

from google.protobuf import descriptor_pool as _pool

POOL = _pool.DescriptorPool()
