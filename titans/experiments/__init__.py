"""What the ``titans`` commands run, apart from their command line (:mod:`titans.cli`):

- :mod:`titans.experiments.single_run`: one run directory: train it from a config
  (``titans train``), its perplexity (``titans eval``), samples (``titans generate``), and a
  model config's description (``titans info``);
- :mod:`titans.experiments.compare`: models trained side by side on the same data and budget,
  evaluated and tabulated (``titans compare``, the README's main job);
- :mod:`titans.experiments.long_context`: long-context task accuracy of trained runs
  (``titans eval niah|babi``) and the task data they share with the comparison;
- :mod:`titans.experiments.dna`: nucleotide LMs pre-trained, fine-tuned as sequence classifiers
  and scored (``titans dna``, the paper's Table 4).
"""
