"""Word-level text: tokens and vocabulary (``tokens``), encoded splits (``encoded``) and the
sentence-corpus and IMDB data modules (``modules``)."""
