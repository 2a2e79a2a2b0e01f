"""The simulator: virtual boards running the firmware, their fleet, and the demo's scenarios."""
