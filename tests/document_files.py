"""The document and image inputs the tests make: they live in
testkit.document_files, which bench/ shares; this module keeps
`from tests import document_files` working."""

from testkit.document_files import *  # noqa: F403
