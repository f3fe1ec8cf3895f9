"""Code both sides of a Stamen federation agree on.

Model loading and the base fingerprint, adapter state and its wire format,
and the run configuration schema. Nothing here touches private data.
"""

from .library_logs import quiet_library_logs

quiet_library_logs()  # before any room imports bitsandbytes, whose import may already warn
