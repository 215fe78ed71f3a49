"""What a dataset is and where its items come from: manifests of KonIQ-10k,
SPAQ and folder + CSV sets (``datasets``), WebDataset shards (``wds``), the
generated demo set (``synth``) and the ``--dataset`` dispatch over them
(``dispatch``).  Imports only the shared modules at the package's top.
"""
