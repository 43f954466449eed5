"""Readers for local corpora and the TFDS builder that stores them as array_record."""
