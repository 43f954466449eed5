"""A folder with one subfolder of text files per class (``folders`` format).

The subfolder name is the label; each file matching ``glob`` (default
``*.txt``) is one example whose text is the file's content. Files are read in
sorted order so the dataset does not depend on the file system.
"""

from __future__ import annotations

from pathlib import Path

from jmtl.data.builders.reading import Example, decoded
from jmtl.data.config import SourceConfig
from jmtl.data.errors import at


def read(path: Path, source: SourceConfig) -> list[Example]:
  if not path.is_dir():
    raise at(path, None, "a folders source needs a directory with one subfolder per class")
  pattern = source.option("glob", "*.txt")
  examples = []
  classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise at(path, None, "no class subfolders")
  for folder in classes:
    for file in sorted(folder.glob(pattern)):
      text = decoded(file, source).strip()
      if not text:
        raise at(file, 1, "empty text file")
      examples.append(Example(file=str(file), line=1, text=" ".join(text.split()),
                              values={t.name: folder.name for t in source.tasks}))
  return examples
