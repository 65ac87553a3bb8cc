"""Write the training corpus that `nprnn train` uses by default.

    python tools/make_corpus.py

The text is the Python Language Reference as shipped with CPython (``pydoc_data.topics``),
licensed under the PSF License Version 2 (see src/nprnn/data/LICENSE-python-docs.txt,
copied from CPython's LICENSE.txt).  It is written to src/nprnn/data/python_reference.txt.
"""
import os
import pydoc_data.topics as topics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "src", "nprnn", "data")


def main():
    text = "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)) + "\n"
    text = "".join(ch for ch in text if ch == "\n" or (ch.isprintable() and ord(ch) < 128))
    with open(os.path.join(DATA, "python_reference.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    lic_src = os.path.join(os.path.dirname(os.__file__), "LICENSE.txt")
    with open(lic_src, encoding="utf-8") as f:
        lic = f.read()
    start = lic.index("B. TERMS AND CONDITIONS FOR ACCESSING OR OTHERWISE USING PYTHON")
    end = lic.index("BEOPEN.COM LICENSE AGREEMENT")
    note = ("The corpus python_reference.txt is the text of the Python Language Reference topics\n"
            f"as shipped with CPython {sys.version.split()[0]} (module pydoc_data.topics), restricted to\n"
            "printable ASCII. Python's documentation is licensed under the PSF License Version 2:\n\n")
    with open(os.path.join(DATA, "LICENSE-python-docs.txt"), "w", encoding="utf-8") as f:
        f.write(note + lic[start:end].rstrip() + "\n")
    print(f"wrote {len(text)} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
