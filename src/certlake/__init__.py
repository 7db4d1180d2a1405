"""certlake: Certificate Transparency firehose and archive."""

__version__ = "0.1.0"
