"""Facts about Microsoft Sentinel's threat intelligence tables that the collector and the sandbox share."""

from __future__ import annotations

# The SourceSystem values Sentinel's MDTI data connectors write (the standard, premium and free feeds).
MDTI_SOURCE_SYSTEMS = (
    "Microsoft Defender Threat Intelligence",
    "Premium Microsoft Defender Threat Intelligence",
    "Microsoft Emerging Threat Feed",
)
