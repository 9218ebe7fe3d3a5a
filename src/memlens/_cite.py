"""BibTeX for ``memlens --cite``: the method memlens implements, and memlens itself."""

from ._version import __version__

BIBTEX = f"""@article{{bagheri2026memorability,
  title   = {{Modeling visual memorability assessment with autoencoders reveals characteristics of memorable images}},
  author  = {{Bagheri, Elham and Mohsenzadeh, Yalda}},
  journal = {{Scientific Reports}},
  year    = {{2026}},
  eprint  = {{2410.15235}},
  archivePrefix = {{arXiv}},
  primaryClass  = {{cs.CV}}
}}

@software{{memlens,
  title   = {{memlens: modelling image memorability with autoencoders}},
  author  = {{{{memlens developers}}}},
  year    = {{2026}},
  version = {{{__version__}}},
  note    = {{Open-source Python toolkit}}
}}
"""
