"""Generated Human3.6M-like data: poses, actions, subjects, cameras, scenes, frames, SPIN-layout files."""
