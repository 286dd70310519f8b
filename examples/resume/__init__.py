"""Examples of the resumable connections guide (docs/resume.md)."""
