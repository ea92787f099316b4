"""statusmail: status-update emails, localized, region-aware, delivered safely."""

__version__ = "0.1.0"
