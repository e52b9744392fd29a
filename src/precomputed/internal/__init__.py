"""What every layer of the driver uses and that knows nothing of volumes: JSON member
parsing, geometry (``Vec3``, ``Box``, ``ChunkGrid``), index arithmetic of lazy views,
recycled result memory and the array-like mixin. Package-internal, but public names:
the plugin imports ``geometry``, ``selection`` and ``arraylike`` from here."""
