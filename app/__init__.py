"""The ladder application: the project's config tree and profiles, the command line, deployments.

It wires the stages (``tasks/``, ``flows/``) to the framework (``ladder/``); the framework
imports nothing from here, nor from the stages.
"""
