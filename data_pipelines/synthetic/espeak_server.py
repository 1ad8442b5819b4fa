"""A tiny libespeak-ng synthesis server: one fresh fork per utterance, for determinism.

Why a separate process that forks: libespeak-ng keeps static synthesiser state (e.g. the
pitch-flutter phase) that espeak_Terminate/espeak_Initialize do not reset, so the same text
gives different samples depending on what was spoken before. This server initialises the
library once and never speaks itself; each request is served by a forked child that starts
from that pristine state, so an utterance's bytes depend only on (text, voice, rate, pitch,
range). The server imports nothing but the standard library (fork-safe: single-threaded).

Protocol (stdin/stdout of this process): request = one JSON line
``{"text", "voice", "rate", "pitch", "range"}``; reply = ``<u32 n_samples><u32 json_len>``
followed by n_samples int16 (22.05 kHz, native order) and a JSON list of events
``[type, sample, text_position, phoneme-or-number]``.
"""
import ctypes
import json
import os
import struct
import sys

EVENT_WORD, EVENT_END, EVENT_PHONEME = 1, 5, 7
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """speak_lib.h espeak_EVENT."""
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def _load():
    import espeakng_loader  # noqa: PLC0415 (the media extra)

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 espeakng_loader.get_data_path().encode(),
                                 INITIALIZE_PHONEME_EVENTS)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({rate})")
    return lib, rate


def _speak(lib, req):
    """Runs in the forked child: synthesise one utterance, return (pcm bytes, events)."""
    pcm, events = [], []

    def on_audio(wav, n, ev):
        if n > 0 and wav:
            pcm.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while ev[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            e = ev[i]
            if e.type == EVENT_PHONEME:
                ident = bytes(e.id.string).split(b"\0")[0].decode("ascii", "replace")
            else:
                ident = int(e.id.number)
            if e.type in (EVENT_WORD, EVENT_END, EVENT_PHONEME):
                events.append([int(e.type), int(e.sample), int(e.text_position), ident])
            i += 1
        return 0

    cb = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(cb)
    if lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
        raise RuntimeError(f"unknown espeak voice {req['voice']!r}")
    lib.espeak_SetParameter(PARAM_RATE, int(req["rate"]), 0)
    lib.espeak_SetParameter(PARAM_PITCH, int(req["pitch"]), 0)
    lib.espeak_SetParameter(PARAM_RANGE, int(req["range"]), 0)
    text = req["text"].encode("utf-8")
    err = lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
    if err != 0:
        raise RuntimeError(f"espeak_Synth failed ({err})")
    return b"".join(pcm), events


def main():
    lib, _ = _load()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        req = json.loads(line)
        stdout.flush()
        pid = os.fork()
        if pid == 0:  # child: speak from the pristine state, reply, vanish
            code = 0
            try:
                pcm, events = _speak(lib, req)
                meta = json.dumps(events).encode()
            except Exception as e:  # reported as zero samples + the error text
                pcm, meta, code = b"", json.dumps({"error": str(e)}).encode(), 1
            os.write(stdout.fileno(), struct.pack("<II", len(pcm) // 2, len(meta)))
            view = memoryview(pcm + meta)
            while view:
                view = view[os.write(stdout.fileno(), view):]
            os._exit(code)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
