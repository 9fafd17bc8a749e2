"""The tutorial example of ``pickle.dump`` (shared/seeds/pickle-dump-example.txt), unchanged
but for ``import streampickle as pickle``: a ``Book`` with ``Part`` s pickled to a ``BytesIO``
and loaded back. The example's own code is untyped, so mypy checks it leniently (pyproject)."""

from __future__ import annotations

import io
import pickle as std_pickle
import re

import pytest

import streampickle as pickle


class Book:
    title = ""
    isbn = ""
    parts = None
    chapters = None

    def __init__(self, title, isbn, parts, chapters):
        self.title = title
        self.isbn = isbn
        self.parts = parts
        self.chapters = chapters

    def identify(self):
        print("Title of the book: %s" % (self.title))
        print("ISBN of the book: %s" % (self.isbn))
        print("Parts are:")
        for part in self.parts:
            print(part)
        print("Chapters are:%s" % (self.chapters))


class Part:
    partName = ""
    beginChapter = -1
    endChapter = -1

    def __init__(self, partName, beginChapter, endChapter):
        self.partName = partName
        self.beginChapter = beginChapter
        self.endChapter = endChapter

    def __str__(self):
        stringRep = "%s" % (self.partName)
        return stringRep


EXPECTED_OUTPUT = """\
Pickling of the object into the memory buffer started
Pickling of the object into the memory buffer ended
Pickled buffer beginning address:
<memory at ADDRESS>
Unpickling of the object from memory started
Unpickling of the object from memory ended
Printing the attributes of unpickled object
Title of the book: Book yet to be written
ISBN of the book: XXX-X-XX-XXXXXX-X
Parts are:
Part 1
Part 2
Part 3
Chapters are:['Chapter 1', 'Chapter 2', 'Chapter 3', 'Chapter 4', 'Chapter 5', 'Chapter 6', \
'Chapter 7']
"""


def run_example() -> tuple[Book, io.BytesIO]:
    part1 = Part("Part 1", 1, 3)
    part2 = Part("Part 2", 4, 5)
    part3 = Part("Part 3", 6, 7)
    bookTitle = "Book yet to be written"
    bookISBN = "XXX-X-XX-XXXXXX-X"
    bookParts = [part1, part2, part3]
    bookChapters = [
        "Chapter 1", "Chapter 2", "Chapter 3",
        "Chapter 4", "Chapter 5", "Chapter 6",
        "Chapter 7",
    ]  # fmt: skip
    book = Book(bookTitle, bookISBN, bookParts, bookChapters)

    pickleBuffer = io.BytesIO()
    print("Pickling of the object into the memory buffer started")
    pickle.dump(book, pickleBuffer)
    print("Pickling of the object into the memory buffer ended")
    print("Pickled buffer beginning address:")
    print(pickleBuffer.getbuffer())
    print("Unpickling of the object from memory started")
    unpickledBook = pickle.loads(pickleBuffer.getbuffer())
    print("Unpickling of the object from memory ended")
    print("Printing the attributes of unpickled object")
    unpickledBook.identify()
    return book, pickleBuffer


def test_book_example_output(capsys: pytest.CaptureFixture[str]) -> None:
    book, pickleBuffer = run_example()
    out = re.sub(r"<memory at 0x[0-9a-f]+>", "<memory at ADDRESS>", capsys.readouterr().out)
    assert out == EXPECTED_OUTPUT
    # dump with the default protocol wrote exactly what the standard library writes
    assert pickleBuffer.getvalue() == std_pickle.dumps(book)
