//! The dashboard: [`state`] (pure data and its updates), [`view`] (pure drawing),
//! [`input`] (keys to actions) and [`app`] (the loop that performs actions).

pub mod app;
pub mod compare;
pub mod input;
pub mod state;
pub mod view;
