"""Example wsup applications (``wsup serve examples.echo:app``)."""
