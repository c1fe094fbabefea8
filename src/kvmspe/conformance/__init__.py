"""The conformance suite: cases as data, their runners on the model or the real kernel, report, vectors."""
