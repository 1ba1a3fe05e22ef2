"""HTTP handlers, one module per resource. They parse, authorise and delegate; no SQL here."""
