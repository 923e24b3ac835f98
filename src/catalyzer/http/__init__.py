"""HTTP/1.1 without I/O: the request reader (bytes in, events out, over httptools), the checks on
a response head, response framing and upload-progress records.

Pure: imports nothing from Twisted and nothing from the rest of catalyzer.
"""
