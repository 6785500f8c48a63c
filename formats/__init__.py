"""Media-format knowledge the gateway, the converter and the test kit share.

Pure byte work from the public formats, nothing of the project imported
(the lowest layer, beside core/):

    isobmff.py     MP4/MOV boxes: their headers, walking them, writing one
    mpeg_audio.py  MPEG audio frame headers (MP3), ADTS headers
    containers.py  which container a file is, from its first bytes
"""
