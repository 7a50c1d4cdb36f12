"""Word-level text: tokens and vocabulary (``tokens``), encoded splits (``encoded``), the shared
data-module machinery (``base``) and its cache check (``cache``), and one module per corpus:
sentence files (``sentences``) and IMDB (``imdb``)."""
