"""Use cases without typer or rich: doctor, launching, importing transcripts, the status line."""
