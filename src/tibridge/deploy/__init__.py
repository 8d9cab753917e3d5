"""Deployment artefacts generated from the code: the Azure (ARM) template."""
