"""Pure rules of Tenure: no I/O, no asyncio, no store. Tested fast and exhaustively."""
