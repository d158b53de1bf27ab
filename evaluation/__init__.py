"""`livestyle eval`: temporal-consistency, sharpness and edit-strength metrics of a stylized
video against its input, with plots, and `--sweep` over engine settings (quality vs fps).

numpy/OpenCV/scikit-image on the CPU; matplotlib only when plotting; torch only inside the
optional perceptual scores (perceptual.py) and the engine a sweep runs."""
