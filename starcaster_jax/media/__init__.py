"""Media IO: mp4 (H.264 + AAC) writing and reading through PyAV, images, grids (DESIGN §4 output)."""
from starcaster_jax.media.video import (
                                        AAC_RATES,
                                        VIDEO_EXTENSIONS,
                                        MediaError,
                                        NativeAudio,
                                        VideoWriter,
                                        grid,
                                        load_image,
                                        read_audio_from_video,
                                        read_audio_native,
                                        read_video,
                                        save_image,
                                        write_mp4,
)

__all__ = ["AAC_RATES", "VIDEO_EXTENSIONS", "MediaError", "NativeAudio", "VideoWriter", "grid", "load_image",
           "read_audio_from_video", "read_audio_native", "read_video", "save_image", "write_mp4"]
