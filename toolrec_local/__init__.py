"""toolrec-local: ToolRec (LLM-empowered recommendation through tool learning) on local models."""

__version__ = "0.1.0"
