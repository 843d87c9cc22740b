"""beam-qa: extractive question answering over uploaded CSV files with Apache Beam."""

__version__ = "0.1.0"
