"""Command-line front end of kachery (click). Thin: parse, one core call, print."""
