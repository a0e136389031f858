"""Plugins shipped with invkit, loaded through the same ``invkit`` entry-point group
that third-party plugins use."""
